"""The LLM preference-alignment track (SPEC 3.1, 4, 5): data, methods, evaluation."""
