"""One node at run time: the store, the use cases, links, witnessing, events,
the webhook sender, the runner.
"""
