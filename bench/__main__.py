from gasbench.cli import main

main()
