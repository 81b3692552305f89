"""Transports: move messages between services (in-memory, Redis, NATS, RabbitMQ, PostgreSQL)."""
