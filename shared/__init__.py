"""The contract every FashionChameleon service and client shares: subjects, schemas, headers,
settings, logging, bus helpers, metrics and the embedded NATS launcher."""
