"""The spine: how any stage is configured, registered, run, resumed and recorded.

Nothing here knows about faces or file formats. `config` (strict frozen dataclasses from YAML),
`manifest` (a run's stages and their settings), `registry` (stage names, classes and dependencies),
`stage` (the contract every stage follows), `runner` (in-process or Ray Data), `ledger` (parquet parts,
done-sets, atomic writes), `run` (lock, resolved manifest, status), `identity` (content hashes that key
caches) and `devices` (torch device and dtype names).
"""
