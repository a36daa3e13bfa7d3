"""Where a grid's work units run. The results store always has one writer: the ``lceval run`` process.

* ``local`` (``lceval.executors.local``): this process, pairing by pairing;
* ``ray`` (``lceval.executors.ray``): Ray actors, rows streamed back to this process.

Both take the units ``Runner.plan`` makes and score them with ``Runner.score_unit``.
"""
