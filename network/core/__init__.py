"""The pure core: records, bodies, crypto, envelopes, roster, routing, lifecycles,
the link protocol, the audit tree. No I/O, no clock, no asyncio.
"""
