"""Sans-IO HTTP codecs and framing rules."""
