"""The request cycle: phases, the typed filter chain, the exchange between the two sides."""
