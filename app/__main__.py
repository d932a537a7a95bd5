import sys

if sys.argv[1:2] == ["check"]:
    from app.options.check import main as check

    sys.exit(check(sys.argv[2:]))

from app.local.run import main  # noqa: E402 - the check command must not load the service

sys.exit(main())
