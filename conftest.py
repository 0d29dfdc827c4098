pytest_plugins = ["aigw_devstack.testing"]
