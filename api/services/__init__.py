"""Per-domain service functions (keyword-only arguments): the rules between routes and store/."""
