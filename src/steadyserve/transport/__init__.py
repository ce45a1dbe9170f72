"""Transports: HTTP (FastAPI/uvicorn) and gRPC (grpc.aio). Thin: decode, validate, call the
engine client, encode. Errors are mapped to status codes in one place per transport."""
