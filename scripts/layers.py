#!/usr/bin/python3
"""Check cyan's module graph: every #include of another module must go to a
module of a lower layer (docs/architecture.md). So the graph has no cycle and
no lower module (core, store, router, cluster, device) includes an upper one
(mqtt, api, shard). Also reports the modules over MAX_LINES lines.

Run from the repository root; exit status 1 on a violation. `make test` runs it.
"""
import os
import re
import sys

# Layer of each module: a module may include only modules of a lower layer.
LAYERS = {
    "core": 0,
    "health": 1, "store": 1, "http": 1,
    "router": 2, "status": 2, "alerts": 2,
    "cluster": 3, "webhooks": 3,
    "device": 4,
    "mqtt": 5, "coap": 5, "api": 5,
    "shard": 6, "monitor": 6, "cli": 6,
}
MAX_LINES = 3000
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/[^"]+"', re.M)


def main():
    bad = []
    lines = {}
    for mod in sorted(os.listdir("src")):
        path = os.path.join("src", mod)
        if not os.path.isdir(path):
            continue
        if mod not in LAYERS:
            bad.append(f"src/{mod}: a module with no layer (add it to scripts/layers.py)")
            continue
        for name in sorted(os.listdir(path)):
            if not name.endswith((".c", ".h")):
                continue
            text = open(os.path.join(path, name), encoding="utf-8").read()
            lines[mod] = lines.get(mod, 0) + text.count("\n")
            for dep in INCLUDE.findall(text):
                if dep == mod:
                    continue
                if dep not in LAYERS:
                    bad.append(f"src/{mod}/{name}: includes unknown module {dep}")
                elif LAYERS[dep] >= LAYERS[mod]:
                    bad.append(f"src/{mod}/{name}: includes {dep} (layer {LAYERS[dep]}), "
                               f"not below {mod} (layer {LAYERS[mod]})")
    for mod, n in sorted(lines.items()):
        if n > MAX_LINES:
            print(f"layers: note: src/{mod} has {n} lines (over {MAX_LINES})")
    for b in bad:
        print("layers: " + b)
    if bad:
        return 1
    print(f"layers: {len(lines)} modules, every include goes down a layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
