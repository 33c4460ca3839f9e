"""The read wing: the commands that only read a run's results (``status``, ``runs``,
``search``, ``show``, ``trends``, ``export``, ``report``) and the notebook API
(``results``). Nothing here imports the modules that write results or run the job
(``tests/test_code_shape.py`` checks it), so a reading command starts fast and cannot
change what it reads."""
