"""{{name}}: a Sluice handler in Python.

The host calls `init` once per instance with the stage's config, then
`handle` once per message; the verdict decides what happens to the message
(`Verdict_Next`, `Verdict_Publish`, `Verdict_Ack`, `Verdict_DeadLetter`,
`Verdict_Retry`). See wit/pipeline.wit for the contract, and
`componentize-py -d wit -w handler bindings .` for the generated API.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        # Refuse what you do not understand: a typo in the stage config
        # then fails `sluice check` instead of being ignored. componentize-py
        # makes a new `WitWorld` for every call, so keep what `init` works
        # out in a module-level global, not on `self`.
        for key, _ in config:
            raise Err(f'unknown config key "{key}"; this plugin takes no configuration')

    def handle(self, origin, msg):
        host.log(host.Level.DEBUG, f"{msg.subject} for {origin.tenant}")
        # Pass the message on unchanged to the next stage.
        return types.Verdict_Next(msg)
