"""The README's walkthrough, run as a user pastes it.

The lines between the walkthrough markers of README.md run in bash (set -e)
from a folder laid out like the repository after `make run`: build/cyan
(the binary under test), examples/, and data/ (the data folder of the node
this test started). Only the addresses change: the README's
http://127.0.0.1:8080 becomes this node's API, and CYAN_PORT tells the
example device this node's MQTT port. Then its output must show what the
README says it shows: the call's return value, the variable, an event from
the stream, the device online.
"""
import json
import os
import re
import subprocess

from conftest import CYAN_BIN

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def walkthrough():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    m = re.search(r"<!-- walkthrough:begin[^>]*-->\s*```sh\n(.*?)```\s*<!-- walkthrough:end -->",
                  text, re.S)
    assert m, "README.md has no walkthrough between its markers"
    return m.group(1)


def test_readme_walkthrough_runs(api_server, tmp_path):
    srv = api_server
    script = walkthrough()
    assert "http://127.0.0.1:8080" in script
    script = script.replace("http://127.0.0.1:8080/v1", srv.api_url + "/v1")
    os.makedirs(tmp_path / "build")
    os.symlink(os.path.abspath(CYAN_BIN), tmp_path / "build" / "cyan")
    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    os.symlink(srv.data_dir, tmp_path / "data")
    # The CLI finds this node through CYAN_URL and CYAN_TOKEN (the README's
    # relies on the defaults: 127.0.0.1:8080 and data/admin-token).
    env = dict(os.environ, CYAN_PORT=str(srv.port), CYAN_HOST=srv.host, CYAN_URL=srv.api_url,
               CYAN_TOKEN=srv.admin_token())
    cp = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env,
                        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    out = cp.stdout
    assert cp.returncode == 0, (cp.returncode, out, cp.stderr[-3000:])
    assert "online as " in out, out  # the example device, in the background
    lines = [line.strip() for line in out.splitlines()
             if line.strip() and not line.startswith("online as ")]
    assert lines[0] == "1", out      # cyan call thermostat-1 led on
    assert lines[1] == "21.5", out   # cyan get thermostat-1 temperature
    listed = [line for line in lines if line.startswith("thermostat-1 ")]
    assert listed and " yes " in listed[0] and "mqtt" in listed[0], out  # cyan list
    data = [line for line in lines if line.startswith("data: ")]
    assert data and json.loads(data[0][6:])["name"] == "temperature", out
