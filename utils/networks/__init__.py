"""Policy networks (MLP, ChiUNet, ChiTransformer) and the critic ensemble Value.

Names are mapped to these classes only in utils/network_factory.py.
"""
