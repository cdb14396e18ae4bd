"""Analysis scripts (parameter reports, benchmarks, experiments), importable as
``tools.analysis.<script>`` by other scripts and the tests."""
