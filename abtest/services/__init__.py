"""Service logic, independent of HTTP: experiments, assignment and exposures, API keys."""
