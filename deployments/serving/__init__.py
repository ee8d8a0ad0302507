"""What only serving needs, beside the deployments: admission, autoscaling, batching, resources,
HTTP errors and schemas, spec fetching and caching, the feedback store, the LLM client, the model
swap, the messages between the deployments, the in-process pipeline, and :mod:`respond` (all
that happens after the model)."""
