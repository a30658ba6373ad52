"""Wire-level vocabulary shared by node, server, SDK and the in-sandbox agent. No I/O here."""
