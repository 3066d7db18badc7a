"""The analytics-counter demo workload (the seed's "Analytics Counter")."""
