"""Low-rank factorization of Linear layers."""
