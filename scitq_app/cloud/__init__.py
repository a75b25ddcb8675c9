"""Cloud providers and SSH provisioning (imported only by the roles that need them)."""
