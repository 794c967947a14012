"""cpn: secure messaging for the 24/7 points of contact (UN Convention against Cybercrime)."""

__version__ = "0.1.0"
