"""LOW_BALANCE: the platform tells a card programme that an account runs low."""
