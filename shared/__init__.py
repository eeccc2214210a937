"""The contract every FashionChameleon service and client shares: subjects, headers, message
schemas, control messages, the token format, errors, the garment service's API and the body
landmarks. Imports nothing of ours; the runtime services run on lives in ``runtime/``."""
