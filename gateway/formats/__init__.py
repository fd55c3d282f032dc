"""One module per wire format, each converting its own requests, responses and streams."""
