"""The catalog of models: records, content-addressed weight storage, registration."""
