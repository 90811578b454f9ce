"""Side-by-side benchmarks of pacsstore against the peers an archive is
judged by: DCMTK's storescp, Orthanc, pynetdicom and pydicom.

``bash scripts/benchmark.sh`` installs the peers, runs every row of
:mod:`benchmarks.suite` and writes the results table of
docs/benchmarks.md. Each row times pacsstore and its peers on the same
data in the same run, so that a ratio, not an absolute figure, is what
a row claims. ``test_hot_paths.py`` is the other tier: pytest-benchmark
tests of the hot paths, run once each in CI so that they cannot rot.

    run.py             the command: options, families, the report
    measure.py         timing repeated trials; samples and their summary
    rows.py            a result row: pacsstore, its peers, targets,
                       verdicts
    data.py            the data sets, generated once and cached
    peers.py           the peers as servers: start on 127.0.0.1, stop
                       always
    processes.py       starting and stopping server processes
    pynetdicom_scp.py  the pynetdicom peer, run as a process of its own
    sending.py         clients: storescu, Orthanc's REST API, a C-FIND
                       SCU
    machine.py         the machine and the versions of a result
    report.py          docs/benchmarks.md
    profile.py         py-spy profiles of pacsstore's side of a row
    suite/             one module per family of rows
    cfind_population.py  the C-FIND index and its requests
    test_hot_paths.py  the pytest-benchmark tier
    test_rows.py       the benchmark's own arithmetic
"""
