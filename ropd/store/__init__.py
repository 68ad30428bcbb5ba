"""The rubric dataset as an artifact: the DuckDB store, rubric QA and dedup, audit queries, the HTML report.

The per-round parquet files are the system of record; everything here reads them and can be rebuilt.
"""
