from engines.cli import main

main()
