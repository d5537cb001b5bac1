"""Search strategies: the ProxylessNAS-style supernet search (paper 003) and its latency objective, the
KD-guided morphism hill climbing (paper 000), and the latency-constrained random-search baseline."""
