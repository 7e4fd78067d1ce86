"""What a person opens: the caption report, the statistics report, the dataset card and contact sheets.

Reports take data (ledger rows, the attributes document, shard samples) and write self-contained files;
they never import a stage.
"""
