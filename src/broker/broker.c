/* placeholder until the broker lands */
int cy_broker_placeholder_;
