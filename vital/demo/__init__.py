"""Offline stand-ins of the demo profile, each named for what it is: the ``template`` generator, the
``heuristic`` judges and the ``simulated`` clinician. Imported only through the backend registries
(``vital.registry``) when params choose them, so no other profile imports or depends on them."""
