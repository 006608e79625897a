"""HTTP plumbing shared by every app: error shape, JSON bodies, middleware, rate
limits, audit log, connection recovery and the Redis client. It imports no app."""
