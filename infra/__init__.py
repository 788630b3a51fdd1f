"""The machinery the gateway and the workers share: the broker connection and queue declaration, logging with
redaction, and settings loading. It knows the event shapes (`schemas`) but neither process (`gateway`, `workers`)."""
