"""aigw runtime: the code every aigw service runs on (NATS, config watching, usage, crypto, logs).

`aigw_contracts` holds what the services say to each other (models, subjects, headers, errors);
this package holds how they say it.
"""
