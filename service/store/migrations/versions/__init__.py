"""One module per schema revision, oldest first (`v0001_initial` is the schema `create_all` used to make)."""
