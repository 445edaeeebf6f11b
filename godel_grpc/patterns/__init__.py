"""Pattern policies: convoy, saga, swarm, breaker, bulkhead, queue, reflex, workflow.

Every module here is pure policy. It takes a definition, state and events in and gives
decisions out, and it imports neither grpc, protobuf, asyncio nor the store. That keeps
the rules of each pattern testable in microseconds and exhaustively (with hypothesis),
and leaves I/O, durability and routing to the core and the servicers.
"""
