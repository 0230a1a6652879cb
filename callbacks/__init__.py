"""One module per page; each has register(app, services) and reads the store."""
