"""A small FastAPI site whose homepage hero is personalized by ef_middleware."""
