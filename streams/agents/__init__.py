"""The worker's agents: each one's batch body, and what runs them."""
