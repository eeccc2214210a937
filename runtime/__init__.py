"""What every service process runs on: the bus helpers, the service lifecycle, the frame-stage
skeleton, the fleet, events, metrics, logging, settings, JetStream assets, image codecs and the
embedded nats-server. Imports ``shared/`` (the contract) and nothing else of ours."""
