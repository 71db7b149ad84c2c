"""Files that ship with the core package (refusal templates, ...); read them with importlib.resources."""
