"""Search strategies: the ProxylessNAS-style supernet search (paper 003) and its latency objective."""
