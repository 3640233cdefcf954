"""Reading run folders back: reports over sweeps and the results pages."""
