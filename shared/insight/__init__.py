"""Fleet insight computed from plain numbers: demand trends and forecasts."""
