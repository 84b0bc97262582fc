"""One module per training stage; `zoo.train` runs them by name."""
