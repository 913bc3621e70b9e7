"""Settings and the database: what every domain of the service shares."""
