"""API keys of lead sources and who may call the API or see the staff pages."""
