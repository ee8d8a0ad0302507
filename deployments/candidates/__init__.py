"""Candidate generation: the operations worth ranking for one request."""
